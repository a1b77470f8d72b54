"""Kill-safe checkpoints for every trainer (SFT and the RL trainers): a checkpoint is complete before it is visible.

``KillSafeCheckpointMixin`` goes before the transformers/TRL trainer in the bases
(``class T(KillSafeCheckpointMixin, SFTTrainer)``). It wraps ``Trainer._save_checkpoint`` without copying it:

1. the main process removes a stale ``checkpoint-N`` of the same step (left by a run that was killed and resumed
   from an earlier checkpoint -- its files must not mix with the new ones, and an old completion marker must not
   vouch for half-written new files), creates the folder and writes ``checkpoint_writing.json`` into it first;
2. every process runs the trainer's own ``_save_checkpoint`` (model, optimizer, scheduler, RNG, trainer_state,
   rotation), then ``save_run_state`` (a hook: state of the method that transformers does not save);
3. after a barrier, the main process writes ``checkpoint_complete.json`` (every file with its size and sha256,
   atomically) and removes the writing marker (``modeling.checkpoint_integrity``); loading or resuming from the
   checkpoint later checks the hashes (``verify_checkpoint``).

A kill at any point leaves either a complete checkpoint or one that every reader (``modeling.loading``,
eval_val.py) skips. On resume ``load_run_state`` (the other hook) runs after transformers restored the optimizer.
"""
from __future__ import annotations

import logging
import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modeling.checkpoint_integrity import mark_checkpoint_complete, mark_checkpoint_writing

logger = logging.getLogger(__name__)


class KillSafeCheckpointMixin:
    """Checkpoints written behind a writing marker and sealed with a completion marker (module docstring)."""

    def checkpoint_dir(self, trial=None) -> str:
        """The folder ``Trainer._save_checkpoint`` writes for the current step."""
        return os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _save_checkpoint(self, model, trial):
        folder = self.checkpoint_dir(trial)
        step = self.state.global_step
        if self.args.should_save:
            if os.path.exists(folder):
                logger.warning("replacing %s (left by an earlier, interrupted or resumed run)", folder)
                shutil.rmtree(folder)
            os.makedirs(folder)
            mark_checkpoint_writing(folder, step)
        self.accelerator.wait_for_everyone()  # nobody writes into the folder before the stale one is gone
        super()._save_checkpoint(model, trial)
        self.save_run_state(folder)
        self.accelerator.wait_for_everyone()  # every process's files are on disk
        if self.args.should_save:
            mark_checkpoint_complete(folder, step)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_run_state(checkpoint)

    # ------------------------------------------------------------------------------------------ hooks
    def save_run_state(self, checkpoint_dir: str) -> None:
        """Write the method's own state into the checkpoint (called on every process; write on
        ``self.args.should_save`` only). Default: nothing."""

    def load_run_state(self, checkpoint_dir: str) -> None:
        """Restore what ``save_run_state`` wrote, when resuming from ``checkpoint_dir`` (every process)."""
