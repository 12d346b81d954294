"""Z3: the project's object storage, kept in GridFS in the same database."""
