"""The method itself (docs/method.md): the frozen SAM ViT encoder applied slice by slice, the
light 3-D decoder, the deep-supervised CE + Dice loss, and the two joined (``SAM3D``)."""
