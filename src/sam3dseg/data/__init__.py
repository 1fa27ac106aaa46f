"""Volumes and datasets: reading and writing images with their geometry, dataset folders (MSD,
nnU-Net v2), preprocessing to the model grid and back, generated datasets."""
