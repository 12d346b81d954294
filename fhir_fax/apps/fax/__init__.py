"""The fax app's static files (HTML, ES modules, CSS and the vendored SMART JS client); package data only."""
