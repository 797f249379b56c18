"""serverless-maas shared library: what the Lambda handlers and the local stack import.

Nothing here imports torch; the inference path imports only onnxruntime and numpy.
"""

__version__ = "0.1.0"
