"""IR passes: BN folding, conversion to an MT-SNN, quantization, scheduling."""
from mtdeploy.passes.convert import ConvertOptions, convert  # noqa: F401
from mtdeploy.passes.quantize import quantize  # noqa: F401
from mtdeploy.passes.schedule import schedule  # noqa: F401,E402
