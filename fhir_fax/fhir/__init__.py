"""Generic FHIR machinery (storage, search, REST). Knows nothing about faxes."""
