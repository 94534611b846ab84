"""Shape presets: where SE blocks sit in real networks, as (C, H, W, reduction)."""

# SE-ResNet-50: the SE of the last bottleneck of each stage sees these maps (r = 16).
SERESNET50 = [(256, 56, 56, 16), (512, 28, 28, 16), (1024, 14, 14, 16), (2048, 7, 7, 16)]

PRESETS = {"seresnet50": SERESNET50}
