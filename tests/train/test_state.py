"""TrainState: one field list, saved/loaded through to_dict/from_dict and the checkpoint files."""

from __future__ import annotations

import dataclasses
import json

import torch

from fastft.train import checkpoint as ckpt
from fastft.train.state import TrainState


def test_round_trip_keeps_saved_fields_and_drops_runtime_ones():
    s = TrainState(global_step=7, epoch=1, batch_in_epoch=3, best_metric=0.5, best_step=6, bad_evals=2)
    s.nonfinite_in_a_row, s.last_saved_step, s.stopped_early = 3, 7, True
    d = s.to_dict(world_size=2, config={"lr": 1.0})
    assert d["world_size"] == 2 and d["global_step"] == 7
    assert "nonfinite_in_a_row" not in d and "last_saved_step" not in d and "stopped_early" not in d
    back = TrainState.from_dict(json.loads(json.dumps(d)))
    saved = [f.name for f in dataclasses.fields(TrainState) if f.metadata.get("saved", True)]
    assert all(getattr(back, n) == getattr(s, n) for n in saved)
    assert (back.nonfinite_in_a_row, back.last_saved_step, back.stopped_early) == (0, -1, False)


def test_checkpoint_writes_and_reads_the_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = TrainState(global_step=4, epoch=0, batch_in_epoch=4, unfrozen_groups=2)
    path = ckpt.save_checkpoint(
        str(tmp_path),
        4,
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state={},
        scaler_state=None,
        state=s,
        meta={"world_size": 1},
    )
    loaded = ckpt.load_checkpoint(path)
    assert loaded["state"] == s
    assert loaded["trainer_state"]["world_size"] == 1
