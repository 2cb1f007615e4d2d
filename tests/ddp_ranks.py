"""Started by ``torchrun`` in test_train_distributed.py: a short fit on every rank, then each rank's
weights to RANKS/rank<N>.pt.

Usage: ddp_ranks.py DATA OUT RANKS BATCH_SIZE MAX_STEPS
"""

import sys
from pathlib import Path

import torch

from facekp.model import HourglassConfig
from facekp.train.distributed import process_group
from facekp.train.fit import Trainer
from facekp.train.run import FitConfig

torch.set_num_threads(1)
data, out, ranks, batch_size, max_steps = sys.argv[1:]
config = FitConfig(data=data, out=out, hourglass=HourglassConfig(num_stacks=2, depth=2, channels=16), epochs=2,
                   batch_size=int(batch_size), lr=5e-3, warmup_epochs=0.2, val_fraction=0.25, checkpoint_minutes=60.0,
                   max_steps=int(max_steps), device="cpu")
with process_group("cpu") as world:
    trainer = Trainer(config, world=world)
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(ranks) / f"rank{world.rank}.pt")
