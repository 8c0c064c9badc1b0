"""FedDST learning core: models, masks, prune/grow, local training, aggregation, strategies.

Pure: depends on torch and numpy only and does no I/O, so the coordinator (``cloud``), the edge
agent (``edge_agent``) and the simulator all run the same math.
"""

__version__ = "0.1.0"
