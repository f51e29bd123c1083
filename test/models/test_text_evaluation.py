"""The text pair's evaluation report: tree shapes and how they are tabled (no models loaded)."""

import pytest

from training.text.evaluate import markdown, tree_shape


def test_tree_shapes_are_k_or_k_colon_b():
    assert tree_shape("1") == (1, None) and tree_shape("1:1") == (1, 1) and tree_shape("2:3") == (2, 3)
    for bad in ("0", "1:0", "x", "1:y"):
        with pytest.raises(ValueError):
            tree_shape(bad)


def _summary(prompts, tokens_per_round, pass_ms, rounds=100):
    return {"prompts": prompts, "acceptance_rate": 0.3, "tokens_per_round": tokens_per_round,
            "accepted_per_round": tokens_per_round - 1, "lossless": prompts, "new_tokens": 0, "rounds": rounds,
            "pass_ms_median": pass_ms}


def test_the_tree_table_prices_each_shape_against_the_chain():
    tree = {"overall": _summary(4, 2.4, 66.0), "chat": _summary(2, 2.2, 60.0), "prose": _summary(2, 2.6, 70.0),
            "rounds_taking_an_alternative": 12}
    result = {"draft": "d", "target": "t", "gamma": 4, "max_new_tokens": 8, "mode": "SPECULATIVE",
              "overall": _summary(4, 2.0, 60.0), "chat": _summary(2, 2.0, 60.0), "prose": _summary(2, 2.0, 60.0),
              "alternatives": {"1": tree, "1:1": tree}, "exit_agreement": {}, "hint_layers": {},
              "per_token_cost": None, "seconds": {"target_alone": 1.0, "speculative": 1.0}, "machine": "m"}
    lines = markdown(result).splitlines()
    assert "| chain | 5 | all (4) | 2.00 | | 60.0 ms | 1.00x | 4/4 |" in lines
    rows = [line for line in lines if line.startswith(("| 1 |", "| 1:1 |"))]
    assert rows[0].startswith("| 1:1 | 6 | all (4) | 2.40 | 12 of 100 | 66.0 ms | 1.09x |")  # 2.4/66 vs 2.0/60
    assert rows[3].startswith("| 1 | 9 | all (4) |")  # gamma 4 x 1 alternative: 4 branches
    assert all(line.count("|") == 9 for line in rows)
