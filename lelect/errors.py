"""One exception hierarchy; the CLI maps each kind to one exit status (lelect.cli)."""

from __future__ import annotations

from lelect.status import ExitStatus


class LelectError(Exception):
    """Base of every error lelect reports to a user as one line."""

    exit_status = ExitStatus.INTERNAL


class UsageError(LelectError):
    """Bad flag, bad election name, bad URL or duration, missing command."""

    exit_status = ExitStatus.USAGE


class BackendUnavailable(LelectError):
    """The backend cannot be reached or is failing (connection refused, auth, TLS, READONLY)."""

    exit_status = ExitStatus.UNAVAILABLE


class ConfigError(LelectError):
    """Configuration refused: unsafe directory, options that break the lease promise, corrupt state."""

    exit_status = ExitStatus.CONFIG


class LeadershipLost(LelectError):
    """Leadership was lost while the job ran; the job was stopped."""

    exit_status = ExitStatus.LOST


class ElectionBusy(LelectError):
    """``no_wait`` was asked and somebody else leads."""

    exit_status = ExitStatus.CONFLICT


class CampaignTimeout(LelectError):
    """The timeout ran out before leadership was won."""

    exit_status = ExitStatus.TIMEOUT


class CampaignCancelled(LelectError):
    """The caller cancelled a campaign while it waited (the asyncio API's task
    cancellation); the candidate left the line."""

    exit_status = ExitStatus.CANCELLED


class NotLeader(LelectError):
    """The leadership a write names (its term) does not lead: nothing was written."""

    exit_status = ExitStatus.NO


class NotWaiting(LelectError):
    """``resign --to NODE``: NODE is not a live candidate waiting in the election; nothing
    changed."""

    exit_status = ExitStatus.NO


class CommandNotFound(LelectError):
    """The job's command was not found or is not executable."""

    exit_status = ExitStatus.NOT_FOUND

