"""Stable-Baselines3 as one adapter of the HERON loop: the only folder that talks to SB3.

- :mod:`heron.sb3.run`: ``train``/``resume``: config -> env -> agent and loop -> run directory.
- :mod:`heron.sb3.callbacks`: one callback per concern (the loop, evaluation, checkpoints, progress).
- :mod:`heron.sb3.buffers`: recording from and rewarding into SB3's rollout and replay buffers.
- :mod:`heron.sb3.vec_env`: the reward-swap VecEnv wrapper and the slot VecEnv.
- :mod:`heron.sb3.state`: an algorithm's training state as tensors and arrays, never pickles.
"""
