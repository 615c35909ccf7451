"""bench_vision: the image-classification step runs for both impls and gets a speed ratio (tiny sizes)."""

from __future__ import annotations

from bench import bench_vision


def test_vision_step_records(monkeypatch):
    tiny = dict(label="vit-tiny", image=32, patch=16, hidden=32, layers=1, heads=2, ffn=64, batch=2, labels=3)
    monkeypatch.setattr(bench_vision, "_sizes", lambda device, quick: dict(tiny))
    recs = bench_vision.run("cpu", quick=True)
    assert [r["impl"] for r in recs] == ["hf", "fastft"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["images_per_s"] > 0 for r in recs), recs
    assert recs[1]["speedup_vs_hf"] is not None and recs[0]["shape"]["S"] == 5
