import pytest
import torch

from stackbench.models import create_model


@pytest.fixture(scope="session")
def mini_masked():
    return create_model("minivgg-masked", seed=0).eval()


@pytest.fixture(scope="session")
def mini_plain():
    return create_model("minivgg", seed=0).eval()


@pytest.fixture(scope="session")
def vgg16_masked():
    # 240M parameters: built once for the whole session.
    return create_model("vgg16-masked", seed=0).eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(123))
