import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)

import heron  # noqa: E402,F401  (registers the heron/ envs)
import tests.envs  # noqa: E402,F401  (registers the test envs)
