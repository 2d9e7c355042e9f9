"""nnU-Net trainer with a cyclic learning rate and snapshot checkpoints (found via nnUNet_extTrainer).

Knobs come from environment variables set by ``medclipsam nnunet-train`` because nnU-Net builds
trainers by class name with a fixed constructor signature.
"""
import os
from os.path import join

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from MedCLIPSAMLib.weak.schedule import cycle_length, cyclic_lr, is_snapshot_epoch, snapshot_name


class CyclicPolyLRScheduler(PolyLRScheduler):
    """Poly decay that restarts every cycle; nnU-Net steps it with the epoch number."""

    def __init__(self, optimizer, initial_lr: float, length: int, epochs: int, schedule: str, exponent: float = 0.9):
        self.length, self.epochs, self.schedule = length, epochs, schedule
        super().__init__(optimizer, initial_lr, length, exponent)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = cyclic_lr(current_step, self.initial_lr, self.length, self.exponent, self.schedule, self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class nnUNetTrainerCyclicLR(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        env = os.environ
        self.num_epochs = int(env.get("MEDCLIPSAM_NNUNET_EPOCHS", 600))
        self.cycles = int(env.get("MEDCLIPSAM_NNUNET_CYCLES", 3))
        self.keep_last = int(env.get("MEDCLIPSAM_NNUNET_KEEP_LAST", 10))
        self.initial_lr = float(env.get("MEDCLIPSAM_NNUNET_LR", 1e-2))
        self.schedule = env.get("MEDCLIPSAM_NNUNET_SCHEDULE", "authors")
        self.num_iterations_per_epoch = int(env.get("MEDCLIPSAM_NNUNET_ITERATIONS", 250))
        self.num_val_iterations_per_epoch = int(env.get("MEDCLIPSAM_NNUNET_VAL_ITERATIONS", 50))
        self.cycle_length = cycle_length(self.num_epochs, self.cycles)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, CyclicPolyLRScheduler(optimizer, self.initial_lr, self.cycle_length, self.num_epochs,
                                                self.schedule)

    def on_epoch_end(self):
        epoch = self.current_epoch  # the base method increments it
        if is_snapshot_epoch(epoch, self.cycle_length, self.keep_last, self.num_epochs):
            self.save_checkpoint(join(self.output_folder, snapshot_name(epoch, self.cycle_length)))
        super().on_epoch_end()
