//! One `transact` batch as TransactWriteItems entries, each with its condition.

use aws_sdk_dynamodb::types::{ConditionCheck, Delete, Put, TransactWriteItem, Update};

use super::item::{self, Expr};
use super::request::build_error;
use crate::store::{StoreError, WriteOp};

/// The TransactWriteItems entries for `ops`; `None` when one of them can never succeed.
pub fn transact_items(
    table: &str,
    ws: &str,
    ops: &[WriteOp],
    now: f64,
) -> Result<Option<Vec<TransactWriteItem>>, StoreError> {
    let mut items = Vec::with_capacity(ops.len());
    for op in ops {
        let (c, id) = op.key();
        let key = item::key(ws, c, id);
        let entry = TransactWriteItem::builder();
        let entry = match op {
            WriteOp::Insert { doc, .. } => {
                let mut expr = Expr::default();
                let condition = expr.absent(now);
                entry.put(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(item::encode(key, doc)))
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .build()
                        .map_err(build_error)?,
                )
            }
            WriteOp::Put { doc, .. } => entry.put(
                Put::builder()
                    .table_name(table)
                    .set_item(Some(item::encode(key, doc)))
                    .build()
                    .map_err(build_error)?,
            ),
            WriteOp::Merge { patch, .. } => match item::merge(patch, now) {
                (Some(update), condition, expr) => entry.update(
                    Update::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .update_expression(update)
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .build()
                        .map_err(build_error)?,
                ),
                (None, condition, expr) => entry.condition_check(
                    ConditionCheck::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .build()
                        .map_err(build_error)?,
                ),
            },
            WriteOp::Add {
                field,
                delta,
                floor,
                ..
            } => {
                let Some(add) = item::add(field, *delta, *floor, now) else {
                    return Ok(None);
                };
                entry.update(
                    Update::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .update_expression(add.update)
                        .condition_expression(add.condition)
                        .set_expression_attribute_names(add.expr.names())
                        .set_expression_attribute_values(add.expr.values())
                        .build()
                        .map_err(build_error)?,
                )
            }
            WriteOp::Delete { .. } => {
                let mut expr = Expr::default();
                let condition = expr.present(now);
                entry.delete(
                    Delete::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .build()
                        .map_err(build_error)?,
                )
            }
        };
        items.push(entry.build());
    }
    Ok(Some(items))
}
