"""Offline corpora, held-out prompt set and data-source specs."""

import pytest

from training.text import corpus, data


def test_eval_prompts_are_held_out_and_deterministic():
    prompts = corpus.eval_prompts()
    assert len(prompts) >= 50
    assert {p.kind for p in prompts} == {"chat", "prose"} or not any(corpus.sources_available().values())
    assert prompts == corpus.eval_prompts()
    train_chat = corpus.chat_train_prompts(10_000)
    assert not set(p.text for p in prompts) & set(train_chat)
    train_prose = corpus.prose_train_passages(400)
    corpus.check_disjoint(train_chat + train_prose, prompts)


def test_check_disjoint_detects_leaks():
    prompts = [corpus.Prompt("chat", "what is a cat?")]
    with pytest.raises(AssertionError):
        corpus.check_disjoint(["so: what is a cat? a pet"], prompts)


def test_training_prompts_are_deterministic():
    assert corpus.chat_train_prompts(20, seed=0) == corpus.chat_train_prompts(20, seed=0)
    assert corpus.chat_train_prompts(20, seed=0) != corpus.chat_train_prompts(20, seed=1)
    assert corpus.prose_train_passages(9) == corpus.prose_train_passages(9)


def test_make_source_specs(tmp_path):
    src = data.make_source("text:chat=3,prose=2,new=8")
    assert len(src) == 3 + min(2, len(corpus.prose_train_passages(2)))
    assert src.new_tokens_chat == 8
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"kind": "chat", "text": "hello"}\n{"kind": "prose", "text": "Once upon"}\n')
    src = data.make_source(f"prompts:{jsonl}")
    assert [p.kind for p in src.prompts] == ["chat", "prose"]
    src = data.make_source("py:training.text.data:text_source?chat=1,prose=0")
    assert len(src) == 1
    with pytest.raises(ValueError):
        data.make_source("nope:thing")


def test_prompt_source_labels_tiny_model(tiny_target):
    model, tok = tiny_target
    src = data.PromptSource([corpus.Prompt("chat", "go to the door"), corpus.Prompt("chat", "find the red ball"),
                             corpus.Prompt("prose", "the robot dog walks to the")],
                            new_tokens_chat=5, new_tokens_prose=4, batch_size=2, top_k=4)
    labels = src.labels(model, tok, capture_layers=[1])
    assert len(labels.sequences) == 3 and labels.kinds == ["chat", "chat", "prose"]
    assert labels.hidden[1].shape == (len(labels), model.config.hidden_size)
    assert labels.final.shape == labels.hidden[1].shape
    # the shared chat prefix is labelled for the first chat prompt only
    first = (labels.seq == 0).sum().item()
    second = (labels.seq == 1).sum().item()
    assert first > second - (len(labels.sequences[1]) - len(labels.sequences[0])) - 1
    gen = labels.generated_rows()
    assert 0 < gen.numel() < len(labels)
