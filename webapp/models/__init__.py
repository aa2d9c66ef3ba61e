"""Models shared by the web app, the admin panel, the worker and the CLI."""
from webapp.models.org import AuditEvent, Domain, IpRule, Organization
from webapp.models.user import User
from webapp.models.mail import Blob, Folder, MailAccount, Message, MessageAddress, MessageText
from webapp.models.system import HealthCheck
# Area modules; each registers its tables with the metadata when imported.
from webapp.models import crm, filters, pop, security, sending  # noqa: F401,E402

__all__ = [
    "AuditEvent", "Blob", "Domain", "Folder", "HealthCheck", "IpRule", "MailAccount",
    "Message", "MessageAddress", "MessageText", "Organization", "User",
]
