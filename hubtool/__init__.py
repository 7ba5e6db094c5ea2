"""hubtool: from training output to a finished Hugging Face Hub release."""

__version__ = "0.1.0"
