"""One exception hierarchy; the CLI maps each kind to one exit status (lelect.cli)."""

from __future__ import annotations


class LelectError(Exception):
    """Base of every error lelect reports to a user as one line."""

    exit_status = 70


class UsageError(LelectError):
    """Bad flag, bad election name, bad URL or duration, missing command."""

    exit_status = 2


class BackendUnavailable(LelectError):
    """The backend cannot be reached or is failing (connection refused, auth, TLS, READONLY)."""

    exit_status = 69


class ConfigError(LelectError):
    """Configuration refused: unsafe directory, options that break the lease promise, corrupt state."""

    exit_status = 78


class LeadershipLost(LelectError):
    """Leadership was lost while the job ran; the job was stopped."""

    exit_status = 73


class ElectionBusy(LelectError):
    """``no_wait`` was asked and somebody else leads."""

    exit_status = 75


class CampaignTimeout(LelectError):
    """The timeout ran out before leadership was won."""

    exit_status = 124


class CampaignCancelled(LelectError):
    """The caller cancelled a campaign while it waited (the asyncio API's task
    cancellation); the candidate left the line."""

    exit_status = 130


class CommandNotFound(LelectError):
    """The job's command was not found or is not executable."""

    exit_status = 127


class InternalError(LelectError):
    """A bug in lelect."""

    exit_status = 70
