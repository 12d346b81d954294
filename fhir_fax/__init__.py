"""fhir-fax: send faxes from a FHIR server, recorded as Communication resources."""

__version__ = "0.1.0"

from .app import create_app  # noqa: E402
from .module import FaxModule  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = ["FaxModule", "Settings", "__version__", "create_app"]
