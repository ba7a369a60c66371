//! What became of a job, as the accel node reports it: BO_WAIT's
//! `job_status`, and the error of the job's out-fence (read through a
//! sync_file, the standard way). See the UAPI header.

use std::fmt;
use std::io;

use crate::uapi::*;

/// The outcome of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// The job ran.
    Ok,
    /// The job ran and failed, or the device refused it.
    Failed,
    /// The device had no working memory for the job.
    NoMemory,
    /// The job never ran: its context was destroyed, or a fence it waited
    /// for can never signal.
    Canceled,
    /// The job's context was lost (a job hung or the device failed); the
    /// file takes no more jobs.
    ContextLost,
    /// The device stopped answering or was removed before answering.
    DeviceLost,
    /// A status this library does not know.
    Unknown(u32),
}

impl JobStatus {
    /// From BO_WAIT's `job_status`.
    pub fn from_uapi(v: u32) -> JobStatus {
        match v {
            DRM_VACCEL_JOB_STATUS_OK => JobStatus::Ok,
            DRM_VACCEL_JOB_STATUS_FAILED => JobStatus::Failed,
            DRM_VACCEL_JOB_STATUS_NO_MEMORY => JobStatus::NoMemory,
            DRM_VACCEL_JOB_STATUS_CANCELED => JobStatus::Canceled,
            DRM_VACCEL_JOB_STATUS_CONTEXT_LOST => JobStatus::ContextLost,
            DRM_VACCEL_JOB_STATUS_DEVICE_LOST => JobStatus::DeviceLost,
            v => JobStatus::Unknown(v),
        }
    }

    /// From a signalled out-fence's error (0 or a negative errno).
    pub fn from_fence_error(err: i32) -> JobStatus {
        match -err {
            0 => JobStatus::Ok,
            libc::ENOMEM => JobStatus::NoMemory,
            libc::ECANCELED => JobStatus::Canceled,
            libc::ENOTRECOVERABLE => JobStatus::ContextLost,
            libc::ENODEV => JobStatus::DeviceLost,
            _ => JobStatus::Failed,
        }
    }

    /// `Ok(())` for a job that ran, its [`JobError`] otherwise.
    pub fn into_result(self) -> Result<(), JobError> {
        match self {
            JobStatus::Ok => Ok(()),
            s => Err(JobError(s)),
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobStatus::Ok => f.write_str("ok"),
            JobStatus::Failed => f.write_str("failed"),
            JobStatus::NoMemory => f.write_str("no device memory"),
            JobStatus::Canceled => f.write_str("cancelled"),
            JobStatus::ContextLost => f.write_str("context lost"),
            JobStatus::DeviceLost => f.write_str("device lost"),
            JobStatus::Unknown(v) => write!(f, "unknown status {v}"),
        }
    }
}

/// A job that did not run to success. Carried inside an [`io::Error`] by
/// the methods that wait for jobs; [`JobError::of`] gets it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobError(pub JobStatus);

impl JobError {
    /// The job status an I/O error carries, if it is a [`JobError`].
    pub fn of(e: &io::Error) -> Option<JobStatus> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<JobError>())
            .map(|j| j.0)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

impl std::error::Error for JobError {}

impl From<JobError> for io::Error {
    fn from(e: JobError) -> io::Error {
        io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_errors_map_to_statuses() {
        assert_eq!(JobStatus::from_fence_error(0), JobStatus::Ok);
        assert_eq!(JobStatus::from_fence_error(-libc::EIO), JobStatus::Failed);
        assert_eq!(
            JobStatus::from_fence_error(-libc::ENOSPC),
            JobStatus::Failed
        );
        assert_eq!(
            JobStatus::from_fence_error(-libc::ENOMEM),
            JobStatus::NoMemory
        );
        assert_eq!(
            JobStatus::from_fence_error(-libc::ECANCELED),
            JobStatus::Canceled
        );
        assert_eq!(
            JobStatus::from_fence_error(-libc::ENOTRECOVERABLE),
            JobStatus::ContextLost
        );
        assert_eq!(
            JobStatus::from_fence_error(-libc::ENODEV),
            JobStatus::DeviceLost
        );
    }

    #[test]
    fn uapi_statuses_round_trip_and_errors_carry_them() {
        for (v, s) in [
            (DRM_VACCEL_JOB_STATUS_OK, JobStatus::Ok),
            (DRM_VACCEL_JOB_STATUS_FAILED, JobStatus::Failed),
            (DRM_VACCEL_JOB_STATUS_NO_MEMORY, JobStatus::NoMemory),
            (DRM_VACCEL_JOB_STATUS_CANCELED, JobStatus::Canceled),
            (DRM_VACCEL_JOB_STATUS_CONTEXT_LOST, JobStatus::ContextLost),
            (DRM_VACCEL_JOB_STATUS_DEVICE_LOST, JobStatus::DeviceLost),
            (77, JobStatus::Unknown(77)),
        ] {
            assert_eq!(JobStatus::from_uapi(v), s);
        }
        assert_eq!(JobStatus::Ok.into_result(), Ok(()));
        let e: io::Error = JobStatus::ContextLost.into_result().unwrap_err().into();
        assert_eq!(JobError::of(&e), Some(JobStatus::ContextLost));
        assert_eq!(e.to_string(), "job context lost");
        assert_eq!(JobError::of(&io::Error::other("x")), None);
    }
}
