"""Early-exit training rows from real verification passes.

The cloud's hint walks the verified block row by row at the exit layer: it counts the rows where
the exit agrees with the draft token and names the exit's token at the first row where it does
not. The hint is right when that is exactly where the target stops accepting and what it says
there. So only rows ``0..accepted`` of a round decide a hint (later rows follow a rejected token
and are never read), and the decisive last row is where the draft went wrong - the cases the
target finds hard. Exits trained on the answer positions of expert data (teacher-forced on the
expert's answer) see neither distribution.

Here the real engine decodes: :class:`specdec.engine.local.LocalSpeculativeDecoder` (the edge's
``EdgeDecoder`` and the cloud's ``Verifier`` in one process) with the trained draft and target,
in rollouts the speculative decoder itself drives (the target's decisions, lossless), every frame
asked for every object in the room. Forward hooks on the target record, for every verification
pass, the exit layers' outputs and the final normed hidden states of the block's rows;
:func:`verification_rows` keeps rows ``0..accepted`` of each round as :class:`training.teacher.Labels`
(the final layer's top-k distribution as the label), which :func:`training.train_exits.train_exit_heads`
trains on.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from go2_sim.episode import instruction_for
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.models.layout import decoder_layout
from specdec.protocol import DecodingMode
from training.teacher import Labels

from .config import TrainConfig, prompt_template
from .data import data_jobs, job_rollouts
from .pair import bgr_to_rgb


class _PassRecorder:
    """Forward hooks on the target: the last ``rows`` rows of every pass at ``layers`` and after
    the final norm (a verification pass feeds ``[last committed token] + block``)."""

    def __init__(self, model, layers: Sequence[int], rows: int):
        layout = decoder_layout(model)
        self.passes: List[Dict[object, torch.Tensor]] = []
        self._current: Dict[object, torch.Tensor] = {}

        def keep(key):
            def hook(_module, _inputs, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                self._current[key] = out[0, -rows:].detach().float().clone()
                if key == "final":  # the norm runs last: the pass is complete
                    self.passes.append(self._current)
                    self._current = {}
            return hook

        self._hooks = [layout.layers[layer].register_forward_hook(keep(layer)) for layer in layers]
        self._hooks.append(layout.final_norm.register_forward_hook(keep("final")))

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@torch.no_grad()
def verification_rows(draft, target, layers: Sequence[int], cfg: TrainConfig, first_chunk: int, episodes: int,
                      gamma: int = 4, topk: int = 16, progress: bool = True) -> Tuple[Labels, Labels]:
    """Rows ``0..accepted`` of every verification round of speculative decodes in ``episodes``
    rollouts (chunks numbered from ``first_chunk``), for every object of the room at every frame:
    ``(train, held_out)``, every ``cfg.held_out_every``-th episode held out.

    ``draft``/``target`` are :class:`~specdec.models.adapters.ModelAdapter`. Each verification
    round is one sequence of the labels (``sequences``: the tokens it committed, the accepted ones
    and the target's own); a hint on it is right when the exit's top token is the label's top
    token on all of its rows (:func:`round_agreement`).
    """
    from tqdm import tqdm

    recorder = _PassRecorder(target.model, layers, gamma + 1)
    hidden: Dict[int, List[torch.Tensor]] = {layer: [] for layer in layers}
    finals: List[torch.Tensor] = []
    seq: List[int] = []
    pos: List[int] = []
    sequences: List[torch.Tensor] = []
    held_seq: List[bool] = []
    in_held_episode = False
    bar = tqdm(total=episodes, desc="verification rows (episodes)", disable=not progress, leave=False)

    def record(runner, instruction: str, image) -> str:
        before = len(recorder.passes)
        result = runner.generate(instruction, image, DecodingMode.SPECULATIVE)
        rounds = result.stats.round_log
        passes = recorder.passes[before:][-len(rounds):]  # the verification passes (prefill first)
        for rs, rec in zip(rounds, passes):
            n = rs.drafted
            keep = min(rs.accepted, n) + 1  # rows 0..accepted: the ones a hint reads
            committed = result.tokens[rs.position:rs.position + keep]
            if target.logits(rec["final"][-(n + 1):][:keep]).argmax(-1).tolist() != committed:
                continue  # not this round's pass: under load the verifier may fold passes together
            for layer in layers:
                hidden[layer].append(rec[layer][-(n + 1):][:keep])
            finals.append(rec["final"][-(n + 1):][:keep])
            seq.extend([len(sequences)] * keep)
            pos.extend(rs.position + i for i in range(keep))
            sequences.append(torch.tensor(committed))
            held_seq.append(in_held_episode)
        recorder.passes.clear()
        return result.text

    try:
        with LocalSpeculativeDecoder(draft, target, gamma=gamma, max_new_tokens=8, draft_length="fixed") as runner:
            template = prompt_template(cfg)

            def policy(env) -> str:
                image = bgr_to_rgb(env.render())
                driving = env.target
                text = record(runner, env.prompt(template), image)
                for obj in env.world.objects:
                    if obj is not driving:
                        record(runner, env.prompt(template, instruction_for(obj)), image)
                return text

            for k, job in enumerate(data_jobs(cfg, first_chunk, episodes, learner_driven=True), first_chunk):
                last = None
                for _env, ep, *_ in job_rollouts(job, policy):  # the policy runs as the generator resumes
                    in_held_episode = (k * cfg.chunk + ep) % cfg.held_out_every == cfg.held_out_every - 1
                    if ep != last:
                        bar.update(1)
                        last = ep
    finally:
        recorder.remove()
        bar.close()
    final = torch.cat(finals)
    logp, ids = torch.log_softmax(target.logits(final), -1).topk(topk, -1)
    labels = Labels(sequences=sequences, seq=torch.tensor(seq), pos=torch.tensor(pos), topk_ids=ids,
                    topk_logp=logp, hidden={layer: torch.cat(h).half() for layer, h in hidden.items()},
                    final=final.half())
    held = torch.tensor(held_seq)[labels.seq]
    return labels.subset(torch.nonzero(~held).flatten()), labels.subset(torch.nonzero(held).flatten())


@torch.no_grad()
def round_agreement(heads, labels: Labels) -> Dict[int, float]:
    """Per exit layer: the share of rounds (sequences of :func:`verification_rows`) on whose every
    row the exit's top token is the target's - the rounds that layer's hint names exactly."""
    out = {}
    for layer in heads.exit_layers:
        logits = heads.exit_logits(layer, labels.hidden[layer].to(torch.float32))
        wrong = (logits.argmax(-1) != labels.topk_ids[:, 0]).long()
        bad_rounds = torch.zeros(len(labels.sequences), dtype=torch.long).index_add_(0, labels.seq, wrong)
        rounds = torch.unique(labels.seq)
        out[layer] = round(float((bad_rounds[rounds] == 0).float().mean()), 4)
    return out
