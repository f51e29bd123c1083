"""make demo's plot: titles inside the image, every failed episode's path visible, units."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _episode(seed, success, path):
    objects = [{"name": "red ball", "color": "red", "shape": "ball", "x": 1.5, "y": 1.0},
               {"name": "blue box", "color": "blue", "shape": "box", "x": -1.0, "y": 2.0}]
    return {"seed": seed, "success": success, "outcome": "done" if success else "max_decisions",
            "path": path, "decisions": [{"latency_ms": 400.0 + 10 * k} for k in range(5)],
            "episode": {"room_size": 6.0, "objects": objects, "target": {"name": "red ball"}}}


def test_plot_keeps_titles_inside_and_shows_failed_paths(tmp_path):
    demo = _demo()
    failed_path = [(-2.0, -2.0), (-1.9, -1.5), (-1.8, -1.0)]
    episodes = [_episode(1000, True, [(0.0, 0.0), (0.8, 0.5), (1.2, 0.8)]),
                _episode(1001, False, failed_path)]
    summary = {"mode": "speculative_early_exit", "rtt_ms": 50.0, "episodes": 2, "successes": 1,
               "latency_ms_median": 420.0, "latency_ms_p90": 440.0}
    out = tmp_path / "demo.png"
    fig = demo.plot(episodes, summary, out)
    assert out.stat().st_size > 10_000
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)  # plot() closed the figure: lay it out again as it was saved
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    texts = [fig._suptitle] + [ax.title for ax in fig.axes]
    for text in texts:
        ext = text.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y1 <= box.y1 + 1, \
            f"title cut off: {text.get_text()!r}"
    maps, latency = fig.axes[:2], fig.axes[2]
    for ax in maps:
        assert ax.get_xlabel() == "x (m)" and ax.get_ylabel() == "y (m)"
    assert "(ms)" in latency.get_xlabel() and latency.get_ylabel()
    # the failed episode's path: drawn, above the objects, inside the axes, marked as failed
    lines = [ln for ln in maps[1].get_lines() if len(ln.get_xdata()) == len(failed_path)]
    assert lines, "failed episode's path not drawn"
    line = lines[0]
    assert line.get_visible() and line.get_linewidth() >= 1.5 and line.get_linestyle() == "--"
    assert line.get_zorder() > max(c.get_zorder() for c in maps[1].collections)
    (x0, x1), (y0, y1) = maps[1].get_xlim(), maps[1].get_ylim()
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in failed_path)
    assert "failed" in maps[1].get_title() and "reached" in maps[0].get_title()
