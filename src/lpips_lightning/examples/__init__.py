"""Small example modules: custom backbones to copy and adapt (see ``configs/custom_encoder.yaml``)."""
