//! ECS Exec: the sessions ExecuteCommand opens, served over the Session Manager data channel
//! that the stock `session-manager-plugin` (and `ecsd exec`) speak.
//!
//! | file | owns |
//! |---|---|
//! | `codec` | the binary message (pure) |
//! | `protocol` | the JSON documents it carries |
//! | `stream` | sequence numbers, acknowledgements, retransmission, the send window |
//! | `words` | the command string to arguments (POSIX word splitting) and back |

pub mod codec;
pub mod protocol;
pub mod stream;
pub mod words;
