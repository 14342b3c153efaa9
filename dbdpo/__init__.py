"""dbdpo: DreamBoothDPO — personalization + Diffusion-DPO with automatically built IS/TS preference pairs."""

__version__ = "0.1.0"
