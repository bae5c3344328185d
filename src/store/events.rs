//! The change feed: one event per applied create, update or delete, in
//! commit order, kept in the events column family for resuming.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::ObjectKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub revision: u64,
    #[schema(value_type = String)]
    pub kind: ObjectKind,
    pub key: String,
    pub action: Action,
    /// The object after the change; absent for deletes.
    pub object: Option<Value>,
}
