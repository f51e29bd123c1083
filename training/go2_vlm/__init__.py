"""The default Go2 VLM pair: a Qwen2-VL target (with early-exit adapters) and a small Qwen2-VL draft.

Both are ordinary ``Qwen2VLForConditionalGeneration`` models built from configs and trained here
on simulator data, so every code path that serves them (adapters, speculative engine, exits)
also serves real Qwen2-VL checkpoints. They share one compact tokenizer (identical fingerprint):

* words: the chat roles, the instruction vocabulary ("go to the red ball"), the action verbs;
* numbers: every magnitude the expert writes is one token ("45", "0.35", "1"), with WordPiece
  continuation pieces (``##0``..``##9``, ``##.``) so any other valid number still tokenizes
  and decodes exactly;
* specials: ChatML (``<|im_start|>``/``<|im_end|>``, the end of an answer) and Qwen2-VL's vision
  placeholders. The chat template is ChatML as in :func:`specdec.models.tiny.chat_template`, but
  writes a message's text before its image (see :data:`CHAT_TEMPLATE`).

A decision is ``<verb> <number> <|im_end|>`` (3 tokens) or ``done <|im_end|>``. The camera frame
(160x120) is resized by the processor to 96x64: 96 patches of 8x8, merged 2x2 into 24 image tokens.

Training (:func:`training.go2_vlm.build.build`; deterministic data for a :class:`TrainConfig`;
CPU, about 40 minutes on one thread):

1. data: expert rollouts with perturbed actions (as :func:`go2_sim.dataset.generate_samples`),
   rendered with the simulator's camera; every frame is labelled for every object in the room as
   the instructed one (same image, other instruction, other expert answer), minus answers that
   depend on what the camera cannot see; magnitudes on a 5 deg / 0.1 m grid (:mod:`.data`);
2. target: supervised on the expert's answers (ordinal label smoothing on the magnitudes) plus
   training-only auxiliary heads (which objects each image token shows, scored against the
   decoder's colour/shape word embeddings; whether each image token shows the instructed
   object and where it is; the target's visibility, bearing and distance) (:mod:`.train`);
3. draft: starts as the target's decoder layers 0 and 3 with its vision tower, then on-policy
   distillation (:mod:`.distill`): frames of target- and draft-driven rollouts, every object asked,
   KL(target || draft) along the target's own greedy answers;
4. exits: the target's early-exit adapters (:func:`training.train_exits.train_exit_heads`) on the
   rows real verification passes read a hint from (:mod:`.verification`).

Modules: ``pair`` (shapes, tokenizer, processor, models), ``config`` (the recipe), ``data``,
``train`` (one model on the data), ``distill``, ``verification``, ``build`` (the recipe end to
end), ``evaluate``, ``card``.

Evaluation (:func:`evaluate_pair`): ROS-free closed loop (:mod:`go2_sim.closed_loop`: strict
parser, the controller's motion executor) on seeded episodes with distractors, for the expert,
the target alone, the draft alone and speculative decoding with early-exit hints (which must
reproduce the target's outcomes exactly), plus the draft's acceptance rate and the exit heads'
top-1 agreement with the final layer.

CLI::

    python -m training.go2_vlm --train [--force] [--out models/go2_vlm]
    python -m training.go2_vlm --eval [--episodes 50] [--out models/go2_vlm]
"""
