"""Settings of known checkpoints whose preprocessing timm's own config does not describe.

Pass one to the estimators together with the checkpoint path, e.g.
``ImageEmbedder(**SIMCLR_RESNET18_CIFAR10, pretrained="resnet18-simclr-cifar10.safetensors")``.
"""

#: timm ``resnet18`` trained by SimCLR on the CIFAR-10 training images (no labels):
#: 96x96 bilinear input with ImageNet normalisation, 512-d features.
SIMCLR_RESNET18_CIFAR10 = dict(
    backbone="resnet18",
    image_size=96,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
