"""Networks (FusionLungNet, the U-Net and ResUNet-18 baselines), their encoders, the network input frame
and weights files."""
