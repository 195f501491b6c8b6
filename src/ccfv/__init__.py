"""ccfv: which pre-trained segmentation model should I fine-tune on my data?"""

__version__ = "0.1.0"
