"""Weak supervision: pseudo-labels to an nnU-Net v2 dataset, cyclic-LR training, checkpoint ensembling."""
