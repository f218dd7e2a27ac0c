"""Elastix parameter maps: presets from ``parameter_maps/``, overrides, validation.

The parameter files are the source of truth; this module only finds them, reads them with
``itk.ParameterObject`` and applies overrides given as native Python values. It is the only
place that turns Python values into elastix strings (``True -> "true"``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PRESET",
    "available_presets",
    "check_parameter_names",
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
        close = difflib.get_close_matches(name, KNOWN_PARAMETERS, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"elastix parameter {name!r} is not a known elastix parameter.{hint} "
            "Parameter names are case-sensitive, as in elastix parameter files."
        )


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
    import itk

    overrides = dict(overrides or {})
    check_parameter_names(list(overrides))
    parameter_object = itk.ParameterObject.New()
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
