//! A container's standard streams: attached before the start so that no
//! output is lost, copied to ours, and a terminal relayed.

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::query_parameters::AttachContainerOptionsBuilder;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::connect::DockerRuntime;
use crate::container::Container;
use crate::error::DockerError;

/// Writes one chunk of a container's output where it belongs (a TTY's
/// output is all `stdout`), flushed so prompts show.
async fn write_chunk<O, E>(chunk: LogOutput, stdout: &mut O, stderr: &mut E) -> std::io::Result<()>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    match chunk {
        LogOutput::StdErr { message } => {
            stderr.write_all(&message).await?;
            stderr.flush().await
        }
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            stdout.write_all(&message).await?;
            stdout.flush().await
        }
        LogOutput::StdIn { .. } => Ok(()),
    }
}

impl DockerRuntime {
    /// Attaches to the container's streams; call before [`Self::start`] so
    /// that no output is missed. For interactive and TTY runs.
    pub async fn attach(
        &self,
        container: &Container,
    ) -> Result<AttachContainerResults, DockerError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        self.docker
            .attach_container(&container.id, Some(options))
            .await
            .map_err(|e| DockerError::engine(format!("attaching to {}", container.name), e))
    }

    /// Attaches to the container's standard output and error only; call
    /// before [`Self::start`] and hand the result to [`Self::drain_output`].
    /// Unlike following the engine's log, the attach stream carries every
    /// byte the command writes, a last line without a newline included,
    /// and ends only when the container has closed both streams.
    pub async fn attach_output(
        &self,
        container: &Container,
    ) -> Result<AttachContainerResults, DockerError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        self.docker
            .attach_container(&container.id, Some(options))
            .await
            .map_err(|e| DockerError::engine(format!("attaching to {}", container.name), e))
    }

    /// Copies an output-only attach ([`Self::attach_output`]) to the
    /// writers, flushing each chunk, until the stream ends: when this
    /// returns, everything the container wrote has been written.
    pub async fn drain_output<O, E>(
        &self,
        attached: AttachContainerResults,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<(), DockerError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut output = attached.output;
        while let Some(item) = output.next().await {
            let chunk =
                item.map_err(|e| DockerError::engine("reading the container's output", e))?;
            write_chunk(chunk, stdout, stderr)
                .await
                .map_err(|e| DockerError::io("writing the container's output", e))?;
        }
        stdout
            .flush()
            .await
            .and(stderr.flush().await)
            .map_err(|e| DockerError::io("writing the container's output", e))
    }

    /// Sends what arrives on `stdin` (closed channel: end of input) into
    /// an attached container and copies its output to the writers (with a
    /// TTY everything goes to `stdout`) until the container closes its
    /// streams. The caller reads its own stdin (a blocking read has no
    /// place on the async runtime, which must be able to shut down).
    pub async fn pump_attached<O, E>(
        &self,
        attached: AttachContainerResults,
        mut stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<(), DockerError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut input = attached.input;
        let feeder = tokio::spawn(async move {
            while let Some(bytes) = stdin.recv().await {
                if input.write_all(&bytes).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            let _ = input.shutdown().await;
        });
        let mut output = attached.output;
        let mut result = Ok(());
        while let Some(item) = output.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    result = Err(DockerError::engine(
                        "reading an attached container's output",
                        e,
                    ));
                    break;
                }
            };
            if let Err(e) = write_chunk(chunk, stdout, stderr).await {
                result = Err(DockerError::io("writing the container's output", e));
                break;
            }
        }
        feeder.abort();
        result
    }

    /// Sets the size of a TTY container's terminal.
    pub async fn resize(
        &self,
        container: &Container,
        rows: u16,
        cols: u16,
    ) -> Result<(), DockerError> {
        let options = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::new()
            .h(i32::from(rows))
            .w(i32::from(cols))
            .build();
        self.docker
            .resize_container_tty(&container.id, options)
            .await
            .map_err(|e| {
                DockerError::engine(format!("resizing the terminal of {}", container.name), e)
            })
    }
}
