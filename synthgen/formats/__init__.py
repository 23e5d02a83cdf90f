"""Label formats of the training code users already run: 4D-Humans ``data.pyd`` (written into the
shards, ``output.formats``), COCO person keypoints and BEDLAM npz (``synthgen export``)."""
