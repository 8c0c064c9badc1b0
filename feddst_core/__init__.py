"""FedDST learning core: models, masks, prune/grow, local training, aggregation, strategies.

Pure: depends on torch and numpy (plus safetensors for ``model_file`` and onnx for ``onnx_export``,
imported only by those modules) and does no I/O: they return bytes. So the coordinator (``cloud``),
the edge agent (``edge_agent``) and the simulator all run the same math.
"""

__version__ = "0.1.0"
