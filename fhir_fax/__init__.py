"""fhir-fax: send faxes from a FHIR server, recorded as Communication resources."""

__version__ = "0.1.0"

from .app import create_app
from .module import FaxModule
from .settings import Settings

__all__ = ["FaxModule", "Settings", "__version__", "create_app"]
