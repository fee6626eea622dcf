"""SQLAlchemy models, the database and its migrations, and the repository of queries."""
