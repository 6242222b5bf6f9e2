// Grafana's own dashboard schema (@grafana/schema, generated from Grafana's CUE kinds), made to
// accept JSON: a string enum accepts its values as plain strings, a numeric enum its numbers.
// tests/observability.rs writes each dashboard in deploy/grafana as an object literal typed
// with these (so that unknown keys are errors too) and runs the TypeScript compiler on it.
import type { Dashboard } from '@grafana/schema';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

export type Json<T> = T extends string
  ? `${T}`
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends Array<infer U>
        ? Array<Json<U>>
        : T extends object
          ? { [K in keyof T]: Json<T[K]> }
          : T;

export type DashboardJson = Json<Dashboard>;

/** A panel's options and custom field config, by the panel plugin's own schema. */
export type PanelJson =
  | { type: 'timeseries'; options: Json<timeseries.Options>; custom: Json<timeseries.FieldConfig> }
  | { type: 'stat'; options: Json<stat.Options>; custom: Record<string, never> };

/** A Prometheus query target, as the dashboards here write them. */
export interface PrometheusTarget {
  datasource: { type: 'prometheus'; uid: string };
  expr: string;
  legendFormat: string;
  range?: boolean;
  instant?: boolean;
  refId: string;
}
