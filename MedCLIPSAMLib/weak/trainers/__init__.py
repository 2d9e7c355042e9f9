"""nnU-Net trainer classes, found by nnU-Net through the nnUNet_extTrainer variable."""
