"""Run by tests/test_distributed.py, alone or under torchrun: train a tiny ViT on toy data, save it."""

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import recipe, toy_data, train_one  # noqa: E402

from distillery.core.config import AugmentConfig  # noqa: E402
from distillery.training.distributed import Ranks  # noqa: E402
from distillery.recipe.models import ModelSpec  # noqa: E402

out, epochs = Path(sys.argv[1]), int(sys.argv[2])
checkpoint = Path(sys.argv[3]) if len(sys.argv) > 3 else None
torch.set_num_threads(1)
spec = ModelSpec("baseline", "vit_tiny_patch16_224", {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                                     "num_heads": 2, "in_chans": 1, "num_classes": 3})
net = spec.build(0)
# DDP_EPOCH_PAUSE: seconds rank 0 waits after each epoch (the others wait at the barrier), so that a test
# can kill the run between epochs however fast this machine trains a toy model
pause = float(os.environ.get("DDP_EPOCH_PAUSE", "0"))
history = train_one(net, toy_data(), recipe(epochs=epochs, augment=AugmentConfig(translate=1, hflip=True), batch_size=16),
              progress=False, checkpoint=checkpoint, callbacks=[lambda record: time.sleep(pause)])
if Ranks.from_env().main:
    torch.save({"state": net.state_dict(), "history": history}, out)
