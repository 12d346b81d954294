"""FHIR Subscriptions (R4 criteria form) on Communications: checks, matching, a durable queue and the channels.

Sits above ``fhir/`` (it parses criteria with the search machinery and reads versions from the store) and
beside ``fax/``: it knows nothing of faxes (a fax status step is a Communication version like any other)
and nothing of ``auth/`` (the runtime hands it the gate).
"""
