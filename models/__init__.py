"""SQLAlchemy models and database session handling."""

from models.db import Database, UnitOfWork
from models.entities import Base, Conversation, Message

__all__ = ["Base", "Conversation", "Database", "Message", "UnitOfWork"]
