"""Elastix parameter maps: presets from ``parameter_maps/``, overrides, validation.

The parameter files are the source of truth; this module only finds them, reads them with
``itk.ParameterObject`` and applies overrides given as native Python values. It is the only
place that turns Python values into elastix strings (``True -> "true"``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PRESET",
    "available_presets",
    "check_parameter_names",
    "check_parameter_values",
    "check_preset_values",
    "load_parameter_maps",
    "preset_files",
    "to_elastix_values",
]

DEFAULT_PRESET = "bspline_ncc"

_HERE = Path(__file__).resolve().parent
# Installed wheel: regtrack/parameter_maps; source checkout / editable install: ../parameter_maps.
_PRESET_DIRS = (_HERE / "parameter_maps", _HERE.parent / "parameter_maps")

# Parameters elastix reads (elastix 5.2 manual and component sources). Elastix silently ignores
# a key it does not know, so a typo would go unnoticed: we check overrides against this list.
KNOWN_PARAMETERS = frozenset(
    [
        "ASGDParameterEstimationMethod",
        "AutomaticParameterEstimation",
        "AutomaticScalesEstimation",
        "AutomaticTransformInitialization",
        "AutomaticTransformInitializationMethod",
        "BSplineInterpolationOrder",
        "BSplineTransformSplineOrder",
        "BendingEnergyPenalty",
        "CenterOfRotation",
        "CenterOfRotationPoint",
        "CheckNumberOfSamples",
        "CompressResultImage",
        "ComputePyramidImagesOnTheFly",
        "ComputeZYX",
        "DefaultPixelValue",
        "Direction",
        "DisplacementMagnitudePenalty",
        "ErodeFixedMask",
        "ErodeMask",
        "ErodeMovingMask",
        "ExactMetricEveryXIterations",
        "ExactMetricSampleGridSpacing",
        "FinalBSplineInterpolationOrder",
        "FinalGridSpacingInPhysicalUnits",
        "FinalGridSpacingInVoxels",
        "FiniteDifferenceDerivative",
        "FixedImageBSplineInterpolationOrder",
        "FixedImageDerivativeScales",
        "FixedImageDimension",
        "FixedImagePyramid",
        "FixedImagePyramidRescaleSchedule",
        "FixedImagePyramidSchedule",
        "FixedImageRegionCenter",
        "FixedImageRegionSize",
        "FixedImageStandardDeviation",
        "FixedInternalImagePixelType",
        "FixedKernelBSplineInterpolationOrder",
        "FixedLimitRangeRatio",
        "GradientMagnitudeTolerance",
        "GridDirection",
        "GridIndex",
        "GridOrigin",
        "GridSize",
        "GridSpacing",
        "GridSpacingSchedule",
        "HowToCombineTransforms",
        "ImagePyramidSchedule",
        "ImageSampler",
        "Index",
        "InitialTransformParameterFileName",
        "InitialTransformParametersFileName",
        "Interpolator",
        "LBFGSUpdateAccuracy",
        "LineSearchGradientTolerance",
        "LineSearchValueTolerance",
        "MaxBandCovSize",
        "MaximumDisplacementEstimationMethod",
        "MaximumNumberOfIterations",
        "MaximumNumberOfJacobianMeasurements",
        "MaximumNumberOfLineSearchIterations",
        "MaximumNumberOfSamplingAttempts",
        "MaximumNumberOfThreads",
        "MaximumStepLength",
        "MaximumStepLengthRatio",
        "Metric",
        "Metric0Weight",
        "Metric1RelativeWeight",
        "Metric1Weight",
        "MinimumGradientMagnitude",
        "MinimumStepLength",
        "MovingImageBSplineInterpolationOrder",
        "MovingImageDerivativeScales",
        "MovingImageDimension",
        "MovingImagePyramid",
        "MovingImagePyramidRescaleSchedule",
        "MovingImagePyramidSchedule",
        "MovingImageStandardDeviation",
        "MovingInternalImagePixelType",
        "MovingKernelBSplineInterpolationOrder",
        "MovingLimitRangeRatio",
        "NewSamplesEveryIteration",
        "NoiseCompensation",
        "NumberOfBandStructureSamples",
        "NumberOfFixedHistogramBins",
        "NumberOfGradientMeasurements",
        "NumberOfHistogramBins",
        "NumberOfJacobianMeasurements",
        "NumberOfMovingHistogramBins",
        "NumberOfParameters",
        "NumberOfResolutions",
        "NumberOfSamplesForExactGradient",
        "NumberOfSamplesForSelfHessian",
        "NumberOfSpatialSamples",
        "NumberOfSubsetSamples",
        "Optimizer",
        "Origin",
        "PassiveEdgeWidth",
        "Registration",
        "RelaxationFactor",
        "RequiredRatioOfValidSamples",
        "ResampleInterpolator",
        "Resampler",
        "ResultImageFormat",
        "ResultImagePixelType",
        "SP_A",
        "SP_a",
        "SP_alpha",
        "SampleGridSpacing",
        "SampleRegionSize",
        "Scales",
        "SelfHessianNoiseRange",
        "SelfHessianSmoothingSigma",
        "ShowExactMetricValue",
        "ShowProgressPercentage",
        "SigmoidInitialTime",
        "SigmoidMax",
        "SigmoidMin",
        "SigmoidScale",
        "SigmoidScaleFactor",
        "Size",
        "Spacing",
        "StepLength",
        "StepSizeStrategy",
        "Stochastic",
        "StopIfWolfeNotSatisfied",
        "SubtractMean",
        "Transform",
        "TransformBendingEnergyPenalty",
        "TransformParameters",
        "TransformRigidityPenalty",
        "UseAdaptiveStepSizes",
        "UseBinaryFormatForTransformationParameters",
        "UseComposition",
        "UseConstantStep",
        "UseCyclicTransform",
        "UseDifferentiableOverlap",
        "UseDirectionCosines",
        "UseFastAndLowMemoryVersion",
        "UseJacobianPreconditioning",
        "UseMaximumLikelihood",
        "UseMultiThreadingForMetrics",
        "UseNeighbourhoodSize",
        "UseNoiseCompensation",
        "UseNormalization",
        "UseRandomSampleRegion",
        "UseRelativeWeights",
        "ValueTolerance",
        "WriteIterationInfo",
        "WritePyramidImagesAfterEachResolution",
        "WriteResultImage",
        "WriteResultImageAfterEachIteration",
        "WriteResultImageAfterEachResolution",
        "WriteTransformParametersEachIteration",
        "WriteTransformParametersEachResolution",
    ]
)
# Indexed and plugin keys: Metric0Weight, Metric1RelativeWeight, ImpactModelsPath0, ...
_KNOWN_PATTERNS = (
    re.compile(r"Metric\d+(Weight|RelativeWeight|UseRelativeWeight)"),
    re.compile(r"(Fixed|Moving)ImagePyramid\d+Schedule"),
    re.compile(r"Impact\w+"),
)


def available_presets() -> list[str]:
    """Names of the presets shipped in ``parameter_maps/``."""
    names = set()
    for directory in _PRESET_DIRS:
        names.update(p.name.split(".")[0] for p in directory.glob("*.txt"))
    return sorted(names)


def preset_files(preset: str | Path | Sequence[str | Path]) -> list[Path]:
    """The elastix parameter files of a preset, one per registration stage, in order.

    ``preset`` is a preset name (``parameter_maps/<name>.txt``, or ``<name>.0.txt``,
    ``<name>.1.txt``, ... for several stages), a path to a parameter file, or a list of paths.
    """
    if isinstance(preset, Sequence) and not isinstance(preset, str):
        return [_existing_file(p) for p in preset]
    if str(preset).endswith(".txt") or Path(preset).exists():
        return [_existing_file(preset)]
    for directory in _PRESET_DIRS:
        single = directory / f"{preset}.txt"
        if single.is_file():
            return [single]
        stages = sorted(directory.glob(f"{preset}.[0-9]*.txt"))
        if stages:
            return stages
    raise ValueError(
        f"preset {str(preset)!r} does not exist. Valid preset names are {available_presets()}; "
        "or pass the path of an elastix parameter file."
    )


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"elastix parameter file {str(path)!r} does not exist; check the path.")
    return path


def to_elastix_values(value: Any) -> tuple[str, ...]:
    """Convert a native Python value to an elastix parameter value (a tuple of strings).

    ``True -> ("true",)``, ``3 -> ("3",)``, ``[100, 50] -> ("100", "50")``.
    """
    if isinstance(value, (list, tuple)):
        return tuple(s for v in value for s in to_elastix_values(v))
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, float) and value.is_integer():
        return (str(int(value)),)
    return (str(value),)


def check_parameter_names(names: Sequence[str]) -> None:
    """Raise ValueError naming any parameter elastix does not know, with the closest names."""
    for name in names:
        if name in KNOWN_PARAMETERS or any(p.fullmatch(name) for p in _KNOWN_PATTERNS):
            continue
        close = _close_names(name)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"elastix parameter {name!r} is not a known elastix parameter.{hint} "
            "Parameter names are case-sensitive, as in elastix parameter files."
        )


def _close_names(name: str) -> list[str]:
    """Known names that start with ``name`` (a truncated name), else the most similar."""
    longer = sorted(n for n in KNOWN_PARAMETERS if n.lower().startswith(name.lower()))
    return longer[:3] or difflib.get_close_matches(name, KNOWN_PARAMETERS, n=3)


def load_parameter_maps(
    preset: str | Path | Sequence[str | Path] = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
):
    """Read a preset into an ``itk.ParameterObject`` and apply overrides to every stage.

    Parameters
    ----------
    preset : str or path or list of paths
        Preset name from ``parameter_maps/`` or elastix parameter file(s).
    overrides : mapping, optional
        Elastix parameter names to native Python values, e.g.
        ``{"MaximumNumberOfIterations": [100, 50], "Metric": "AdvancedMattesMutualInformation"}``.
        An override applies to all stages; use a parameter file for per-stage values.

    Returns
    -------
    itk.ParameterObject
    """
    from . import itk_elastix

    overrides = dict(overrides or {})
    check_parameter_names(list(overrides))
    check_parameter_values(overrides)
    check_preset_values(preset, overrides)
    parameter_object = itk_elastix.parameter_object()
    for path in preset_files(preset):
        parameter_object.AddParameterFile(str(path))
    for index in range(parameter_object.GetNumberOfParameterMaps()):
        for name, value in overrides.items():
            parameter_object.SetParameter(index, name, to_elastix_values(value))
    return parameter_object


def parameter_overrides_from_strings(items: Sequence[str]) -> dict[str, list[str]]:
    """Parse CLI overrides ``Name=v1,v2`` or ``Name=v1 v2`` into ``{Name: [v1, v2]}``."""
    overrides: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"parameter override {item!r} is not of the form Name=value, "
                "e.g. --set MaximumNumberOfIterations=100,50"
            )
        overrides[name.strip()] = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    return overrides


# What each numeric or boolean elastix parameter takes; a bad value can crash elastix (a
# negative grid spacing segfaults) or be read as something else (10.7 iterations as 10).
_WHOLE_AT_LEAST_1 = ("a whole number >= 1", lambda x: x.is_integer() and x >= 1)
_POSITIVE = ("a number > 0", lambda x: x > 0)
_AT_LEAST_0 = ("a number >= 0", lambda x: x >= 0)
_ANY_NUMBER = ("a number", lambda x: True)


def _whole(low: int, high: int):
    """A whole number from ``low`` to ``high``: counts have an upper bound, since a count no
    registration needs (1e9 iterations or samples) runs for hours or exhausts memory."""
    return (f"a whole number from {low} to {high}", lambda x: x.is_integer() and low <= x <= high)


#: Upper bounds of elastix counts, far above what a 2D frame needs (presets: 30-100
#: iterations, 400-1000 samples, 3 resolutions).
MAX_ITERATIONS = 10_000
MAX_SAMPLES = 1_000_000
_VALUE_RULES = {
    "MaximumNumberOfIterations": _whole(1, MAX_ITERATIONS),
    "NumberOfResolutions": _whole(1, 10),
    **dict.fromkeys(
        ["NumberOfSpatialSamples", "NumberOfSamplesForExactGradient"], _whole(1, MAX_SAMPLES)
    ),
    **dict.fromkeys(
        ["NumberOfHistogramBins", "NumberOfFixedHistogramBins", "NumberOfMovingHistogramBins"],
        _whole(1, 4096),
    ),
    **dict.fromkeys(["FixedImageDimension", "MovingImageDimension"], _WHOLE_AT_LEAST_1),
    "MaximumNumberOfSamplingAttempts": _whole(0, 1000),
    **dict.fromkeys(
        [
            "NumberOfJacobianMeasurements",
            "NumberOfGradientMeasurements",
            "MaximumNumberOfJacobianMeasurements",
            "NumberOfBandStructureSamples",
        ],
        _whole(0, MAX_SAMPLES),
    ),
    **dict.fromkeys(
        [
            "FinalGridSpacingInPhysicalUnits",
            "FinalGridSpacingInVoxels",
            "GridSpacingSchedule",
            "ImagePyramidSchedule",
            "FixedImagePyramidSchedule",
            "MovingImagePyramidSchedule",
            "MaximumStepLength",
            "MaximumStepLengthRatio",
            "SP_a",
            "SP_alpha",
            "FixedImageStandardDeviation",
            "MovingImageStandardDeviation",
            "SampleGridSpacing",
            "SampleRegionSize",
        ],
        _POSITIVE,
    ),
    **dict.fromkeys(["SP_A", "FixedLimitRangeRatio", "MovingLimitRangeRatio"], _AT_LEAST_0),
    "DefaultPixelValue": _ANY_NUMBER,
    "RequiredRatioOfValidSamples": ("a number in (0, 1]", lambda x: 0 < x <= 1),
    **dict.fromkeys(
        [
            "BSplineInterpolationOrder",
            "FinalBSplineInterpolationOrder",
            "FixedImageBSplineInterpolationOrder",
        ],
        ("a whole number from 0 to 5", lambda x: x.is_integer() and 0 <= x <= 5),
    ),
    "BSplineTransformSplineOrder": ("1, 2 or 3", lambda x: x in (1, 2, 3)),
}
_BOOLEAN_PARAMETER = re.compile(
    r"(Use|Write|Erode|Check|Compress|Show|Automatic(Parameter|Scales)Estimation$|"
    r"AutomaticTransformInitialization$|NewSamplesEveryIteration$|SubtractMean$).*"
)
_INDEXED_WEIGHT = re.compile(r"Metric\d+(Weight|RelativeWeight)")


def check_parameter_values(overrides: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first override whose value elastix would misread or crash on.

    Numbers are checked by type and range (grid spacings > 0, iterations whole and >= 1, ...),
    booleans must be true or false; parameters taking names (Metric, Transform) are not checked.
    """
    for name, value in overrides.items():
        texts = to_elastix_values(value)
        if not texts:
            raise ValueError(f"elastix parameter {name} has no value; e.g. --set {name}=VALUE")
        what, accepts = _value_rule(name)
        for text in texts:
            if what and not accepts(text):
                raise ValueError(
                    f"elastix parameter {name} takes {what}, got {text!r}; "
                    f"correct it in --set {name}=... or in the parameter file"
                )


def check_preset_values(preset, overrides: Mapping[str, Any] | None = None) -> None:
    """:func:`check_parameter_values` on every value of the preset's parameter files that no
    override replaces; a bad one raises ValueError naming the file (read without ITK, so
    it fails before anything loads)."""
    replaced = set(overrides or ())
    for path in preset_files(preset):
        found = read_parameter_file(path)
        _check_is_parameter_map(path, found)
        values = {k: v for k, v in found.items() if k not in replaced}
        try:
            check_parameter_values(values)
        except ValueError as error:
            raise ValueError(f"parameter file {str(path)!r}: {error}") from None


#: Parameters without which a file is not an elastix parameter map.
_REQUIRED_PARAMETERS = ("Registration", "Transform", "Metric", "Optimizer")


def _check_is_parameter_map(path: Path, values: Mapping[str, Any]) -> None:
    """ValueError unless a parameter file names its registration, transform, metric and
    optimizer (a text file that is not a parameter map holds none of them)."""
    missing = [name for name in _REQUIRED_PARAMETERS if name not in values]
    if missing:
        found = f"it sets {len(values)} parameters but not" if values else "it holds no"
        raise ValueError(
            f"{str(path)!r} is not an elastix parameter file: {found} "
            f"{', '.join(missing) if values else '(Name value) lines'}; pass a parameter "
            "file such as parameter_maps/bspline_ncc.txt, or a preset name (`regtrack presets`)"
        )


_PARAMETER_LINE = re.compile(r"^\s*\((\w+)((?:\s+(?:\"[^\"]*\"|[^\s\"()]+))*)\s*\)")
_PARAMETER_VALUE = re.compile(r'"([^"]*)"|([^\s"]+)')


def read_parameter_file(path: str | Path) -> dict[str, tuple[str, ...]]:
    """The ``(Name value ...)`` lines of an elastix parameter file, as elastix reads them:
    name -> value strings (quotes removed); ``//`` comments and other lines are skipped.
    A name given twice raises ValueError, as elastix refuses it."""
    values = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        raise ValueError(f"cannot read parameter file {str(path)!r}: {err.strerror}") from None
    if "\0" in text:
        raise ValueError(
            f"{str(path)!r} is not an elastix parameter file (it is binary); pass a text "
            "parameter file such as parameter_maps/bspline_ncc.txt, or a preset name"
        )
    for number, line in enumerate(text.splitlines(), 1):
        match = _PARAMETER_LINE.match(line)
        if not match:
            continue
        if match.group(1) in values:
            raise ValueError(
                f"parameter file {str(path)!r}: {match.group(1)} is given a second time on "
                f"line {number}; elastix takes each parameter once. Keep one of the lines."
            )
        tokens = _PARAMETER_VALUE.findall(match.group(2))
        values[match.group(1)] = tuple(quoted or bare for quoted, bare in tokens)
    return values


def _value_rule(name: str):
    """(what the parameter takes, test of one value string), or (None, None) if unchecked."""
    if name in _VALUE_RULES or _INDEXED_WEIGHT.fullmatch(name):
        what, test = _VALUE_RULES.get(name, _AT_LEAST_0)
        return what, lambda text: _number_passes(text, test)
    if _BOOLEAN_PARAMETER.fullmatch(name) and not name.startswith("UseNeighbourhood"):
        return "true or false", lambda text: text in ("true", "false")
    return None, None


def _number_passes(text: str, test) -> bool:
    """Whether ``text`` is a finite number that passes ``test``."""
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) and bool(test(number))
