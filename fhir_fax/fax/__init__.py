"""The fax domain: sending, numbers, status. Talks to storage only through the FHIR store and the outbox."""
