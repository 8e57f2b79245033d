"""ComfyUI nodes of comfyui-ip2p: thin adapters from ComfyUI's native types to the ``ip2p`` core.

``NODES`` is the one table of the pack; both ComfyUI mappings derive from it. Node ids are saved in
users' workflows: never rename one.
"""

from . import host
from .auto_guidance import IP2PAutoGuidance
from .clip import CLIP_FOLDER, IP2PCLIPFilter, IP2PCLIPLoader
from .conditioning import IP2PConditioning
from .dataset import IP2PDatasetWriter
from .dino import DINO_FOLDER, IP2PDINOLoader
from .evaluate import IP2PEvaluate
from .guider import IP2PDualCFGGuider
from .loaders import IP2PCheckpointLoader, IP2PDiffusersLoader
from .pairs import IP2PPairGenerator, IP2PPromptSource
from .sampler import IP2PKSampler
from .sweep import IP2PGuidanceSweep
from .tradeoff import IP2PTradeoffPlot

NODES = (
    IP2PCheckpointLoader,
    IP2PDiffusersLoader,
    IP2PKSampler,
    IP2PConditioning,
    IP2PDualCFGGuider,
    IP2PGuidanceSweep,
    IP2PPromptSource,
    IP2PPairGenerator,
    IP2PCLIPLoader,
    IP2PCLIPFilter,
    IP2PDatasetWriter,
    IP2PTradeoffPlot,
    IP2PAutoGuidance,
    IP2PDINOLoader,
    IP2PEvaluate,
)

host.register_model_folder(CLIP_FOLDER)
host.register_model_folder(DINO_FOLDER)

NODE_CLASS_MAPPINGS = {node.NODE_ID: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.NODE_ID: node.DISPLAY_NAME for node in NODES}
