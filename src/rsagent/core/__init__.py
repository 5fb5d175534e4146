"""Core types: images, masks and RLE, boxes and views, the trajectory document. No heavy deps."""
