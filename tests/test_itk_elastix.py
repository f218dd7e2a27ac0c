"""The selective load of ITK's elastix wrappers: what it loads, and that its images are sound."""

import gc
import json
import subprocess
import sys

import numpy as np
import pytest

from regtrack import itk_elastix


def test_float_and_uint8_images_round_trip_through_itk():
    rng = np.random.default_rng(0)
    for array in (rng.random((7, 11), dtype=np.float32), rng.integers(0, 2, (5, 3), np.uint8)):
        image = itk_elastix.image_from_array(array)
        assert tuple(image.GetLargestPossibleRegion().GetSize()) == (array.shape[1], array.shape[0])
        back = itk_elastix.array_from_image(image)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


def test_an_image_owns_its_pixels():
    """elastix keeps images whose Python proxies are gone: the pixels must be ITK's own."""
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = itk_elastix.image_from_array(array[:, ::-1])  # a strided view, copied in C order
    expected = array[:, ::-1].copy()
    array[...] = -1
    del array
    gc.collect()
    np.testing.assert_array_equal(itk_elastix.array_from_image(image), expected)


def test_unsupported_arrays_are_refused_by_name():
    with pytest.raises(TypeError, match="float32 or uint8"):
        itk_elastix.image_from_array(np.zeros((4, 4), np.float64))
    with pytest.raises(TypeError, match="2D"):
        itk_elastix.image_from_array(np.zeros((2, 4, 4), np.float32))


def test_the_classes_are_the_ones_itk_hands_out():
    """Code that uses ``itk`` itself gets the same classes (loaded in a fresh process, as
    ITK's full lazy load takes seconds)."""
    code = (
        "import itk\n"
        "from regtrack import itk_elastix\n"
        "ns = itk_elastix.load()\n"
        "image = itk.Image[itk.F, 2]\n"
        "print(ns.RegistrationMethod is itk.ElastixRegistrationMethod[image, image],"
        " ns.ParameterObject is itk.ParameterObject)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_loading_skips_the_rest_of_itk_and_leaves_hosts_importable():
    """The load touches no ITK module through the lazy loader, imports neither torch nor the
    optional hosts, and leaves them importable afterwards."""
    code = (
        "import json, sys\n"
        "from regtrack import itk_elastix\n"
        "itk_elastix.load()\n"
        "import itk\n"
        "state = {'lazy': sorted(itk.loaded_lazy_modules),\n"
        "         'imported': [m for m in ('torch', 'IPython', 'distributed') if m in sys.modules]}\n"
        "import distributed\n"
        "state['distributed_after'] = 'distributed' in sys.modules\n"
        "print(json.dumps(state))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    state = json.loads(out.stdout)
    assert state == {"lazy": [], "imported": [], "distributed_after": True}


def test_a_registration_run_loads_neither_torch_nor_the_rest_of_itk():
    """Tracking by registration needs neither torch (SAM, IMPACT) nor ITK's lazy loader."""
    code = (
        "import json, sys\n"
        "import itk, regtrack\n"
        "from regtrack.phantom import generate_phantom\n"
        "case = generate_phantom(n_frames=3, shape=(96, 96), seed=1)\n"
        "result = regtrack.track(case.frames, case.first_mask)\n"
        "print(json.dumps({'sources': [r['source'] for r in result.records],\n"
        "    'lazy': sorted(itk.loaded_lazy_modules),\n"
        "    'imported': [m for m in ('torch', 'sam2', 'impact') if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    state = json.loads(out.stdout.splitlines()[-1])
    assert state == {
        "sources": ["given", "registration", "registration"],
        "lazy": [],
        "imported": [],
    }
