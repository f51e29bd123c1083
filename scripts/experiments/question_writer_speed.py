#!/usr/bin/env python3
"""How fast does the target write its own questions? (issue 14, item 4: the feature draft's second
stage spends most of its labelling time here)

One batch of question-writing prompts (as ``corpus.self_written_questions`` builds them), the
target in bfloat16 as ``FINETUNE_RECIPE`` labels, timed side by side in one process, alternating:
transformers' sampling (temperature 0.8, top-p 0.95: it sorts and draws over the whole vocabulary)
against the writer's own sampler (``corpus._sampling_processor``: top-p within the top 100, only
the drawn token left for a greedy ``generate``). Prints seconds per batch and questions per batch.

    python scripts/experiments/question_writer_speed.py [--batch 128] [--repeats 2]

2026-12-04, 2-core Intel Xeon (AMX), torch 2.13.0+cpu: transformers' sampling 14.33 s a batch (112
questions), own sampler 8.02 s (108 questions): 0.56x.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=".cache/models/smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, set_seed

    from training.teacher import labelling_model
    from training.text import corpus

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    tokenizer.padding_side = "left"
    model = labelling_model(AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval(), "bfloat16")
    subjects = list(corpus.SELF_WRITTEN_SUBJECTS) + list(corpus._TOPICS) + list(corpus._TOPICS_2)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": corpus.SELF_WRITTEN_ASK.format(s=s)}],
                                           tokenize=False, add_generation_prompt=True)
             for s in (subjects * (args.batch // len(subjects) + 1))[:args.batch]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ways = {
        "transformers' sampling": dict(do_sample=True, temperature=0.8, top_p=0.95),
        "own sampler": dict(do_sample=False,
                            logits_processor=LogitsProcessorList([corpus._sampling_processor(0.8, 0.95, 100)])),
    }
    times = {name: [] for name in ways}
    found = {name: 0 for name in ways}
    for repeat in range(args.repeats):
        for name, kwargs in ways.items():
            set_seed(repeat)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=40, pad_token_id=tokenizer.eos_token_id, **kwargs)
            times[name].append(time.perf_counter() - t0)
            found[name] += sum(bool(corpus.question_in(tokenizer.decode(row, skip_special_tokens=True)))
                               for row in gen[:, enc["input_ids"].shape[1]:])
    for name in ways:
        print(f"{name:24s} {min(times[name]):6.2f} s per batch of {args.batch} (best of {args.repeats}), "
              f"{found[name] / args.repeats:.0f} questions per batch")
    print(f"ratio: {min(times['own sampler']) / min(times[next(iter(ways))]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
