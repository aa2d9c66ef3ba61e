"""Organizations and users: creation rules shared by the CLI, the admin panel and tests."""
from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from webapp.models import Domain, Folder, MailAccount, Organization, User
from webapp.models.mail import SYSTEM_FOLDERS
from webapp.models.user import DEFAULT_QUOTA_BYTES
from webapp.services.passwords import check_strength, hash_password


class DirectoryError(ValueError):
    """Bad input for an organization or user; the message is shown as is."""


def normalize_email(value: str) -> str:
    """Validate an address strictly and return it lowercased (our identity for it)."""
    value = (value or "").strip()
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise DirectoryError(f"{value!r} is not a valid email address: {exc}") from None
    return result.normalized.lower()


def normalize_domain(value: str) -> str:
    """Validate a domain name (at least two labels) and return it lowercased."""
    value = (value or "").strip().lower().rstrip(".")
    if not value or "@" in value or "." not in value:
        raise DirectoryError(f"{value!r} is not a valid domain name (example: example.com).")
    try:
        validate_email(f"postmaster@{value}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise DirectoryError(f"{value!r} is not a valid domain name: {exc}") from None
    return value


def find_org_by_domain(session: Session, domain: str) -> Organization:
    """The organization hosting this domain, or a DirectoryError naming it."""
    name = normalize_domain(domain)
    org = session.scalar(select(Organization).join(Domain).where(Domain.name == name))
    if org is None:
        raise DirectoryError(f"No organization hosts the domain {name!r}.")
    return org


def create_system_folders(session: Session, user: User) -> None:
    """Give a new user the system folders every mailbox has."""
    for role, name, position in SYSTEM_FOLDERS:
        session.add(Folder(user_id=user.id, name=name, role=role, position=position))


def create_user(session: Session, org: Organization, *, email: str, password: str,
                is_admin: bool = False, display_name: str = "",
                must_change_password: bool = False,
                quota_bytes: int = DEFAULT_QUOTA_BYTES) -> User:
    """Create a user with its hosted account and system folders (not committed)."""
    address = normalize_email(email)
    domain = address.rsplit("@", 1)[1]
    hosted = {d.name for d in org.domains}
    if domain not in hosted:
        raise DirectoryError(
            f"{address} is not on a domain of {org.name}: use one of {', '.join(sorted(hosted))}.")
    taken = session.scalar(select(func.count()).select_from(User).where(User.email == address))
    if taken:
        raise DirectoryError(f"A user with the address {address} already exists.")
    try:
        check_strength(password, address)
    except ValueError as exc:
        raise DirectoryError(str(exc)) from None
    user = User(org_id=org.id, email=address, display_name=display_name.strip(),
                password_hash=hash_password(password), is_admin=is_admin,
                must_change_password=must_change_password, quota_bytes=quota_bytes)
    session.add(user)
    session.flush()
    session.add(MailAccount(org_id=org.id, user_id=user.id, kind="hosted", email=address,
                            display_name=user.display_name))
    create_system_folders(session, user)
    session.flush()
    return user


def create_organization(session: Session, *, name: str, domain: str, admin_email: str,
                        admin_password: str,
                        quota_bytes: int = DEFAULT_QUOTA_BYTES) -> tuple[Organization, User]:
    """Create an organization with its first hosted domain and first admin (not committed)."""
    name = (name or "").strip()
    if not name:
        raise DirectoryError("The organization needs a name.")
    domain_name = normalize_domain(domain)
    if session.scalar(select(Domain).where(Domain.name == domain_name)) is not None:
        raise DirectoryError(f"The domain {domain_name} is already hosted here.")
    org = Organization(name=name)
    org.domains.append(Domain(name=domain_name, is_primary=True))
    session.add(org)
    session.flush()
    admin = create_user(session, org, email=admin_email, password=admin_password, is_admin=True,
                        quota_bytes=quota_bytes)
    return org, admin
